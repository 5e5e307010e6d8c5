package nccl

//go:generate go tool bpf2go -cc clang -cflags "-O2 -g -Wall -Werror -D__TARGET_ARCH_x86 -I/usr/include/x86_64-linux-gnu" -target amd64 -type event -type nccl_op -type comm_id_source -type load -type load_kind nccl nccl.bpf.c
