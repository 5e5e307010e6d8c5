/* A library named libnccl.so.2 that is not NCCL: the tracer must leave it. */
int not_nccl(void)
{
	return 42;
}
