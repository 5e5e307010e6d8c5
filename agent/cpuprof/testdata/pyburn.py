# pyburn burns CPU in pure Python and in a C extension until killed, for
# the CPython unwinding tests (which find the lines below by their marks).
import sys

sys.path.insert(0, sys.argv[1])  # where the test built loupeburn
import loupeburn


def hot_python_loop(n):
    x = 0
    for i in range(n):  # LOOP
        x = (x + i * i) & 0xFFFF  # HOT
    return x


def calls_c():
    return loupeburn.spin(100000000)  # CALLS_C


def outer_python():
    while True:
        hot_python_loop(1000000)  # CALLS_HOT
        calls_c()  # CALLS_CALLS_C


print("ready", flush=True)  # the module is loaded: the test samples from here
outer_python()
