// loupeburn: a CPython extension module whose spin(n) burns CPU in C
// (loupe_c_spin), built by the tests against each interpreter's headers,
// without frame pointers, so a stack runs Python -> C extension.
#define PY_SSIZE_T_CLEAN
#include <Python.h>

volatile unsigned long loupe_sink;

__attribute__((noinline)) void loupe_c_spin(unsigned long n)
{
	for (unsigned long i = 0; i < n; i++)
		loupe_sink += i * i;
}

static PyObject *spin(PyObject *self, PyObject *args)
{
	unsigned long n;
	if (!PyArg_ParseTuple(args, "k", &n))
		return NULL;
	loupe_c_spin(n);
	return PyLong_FromUnsignedLong(loupe_sink);
}

static PyMethodDef methods[] = {
	{"spin", spin, METH_VARARGS, "burn CPU in C"},
	{NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "loupeburn", NULL, -1, methods};

PyMODINIT_FUNC PyInit_loupeburn(void) { return PyModule_Create(&module); }
