// Package logparse turns the log lines that training jobs, inference
// consumers and GPU hosts already write into traces.Event records: the
// group-membership changes of Kafka consumers (Java client, classic and
// KIP-848 protocols, librdkafka) and torch elastic agents, and faults
// (kernel NVRM XID lines, NCCL watchdog timeouts and NCCL errors, CUDA
// errors, out-of-memory errors, Python crash stack traces).
//
// It sits under traces/ because both sides use it: the agent's log tailer
// (agent/logtail) feeds it the lines it follows, and the aggregator's
// analyze-logs command feeds it files a user already has. The events it
// makes, their kinds and attributes, are the contract the analyzers read
// (rebalance, hw-faults, triage); the attributes are listed below.
//
// Each line may come wrapped: by a container runtime (CRI, Docker
// json-file), by journald (journalctl -o short, short-precise, short-iso,
// short-iso-precise, json; syslog files in the same layouts) or by dmesg -T.
// The wrapper's time, host, unit and pid are taken and the wrapper removed
// before the program's own text is parsed. A line with no time of its own
// (worker output without a logging prefix) takes the time of the nearest
// timestamped line of the same stream, counted in lines (the earlier one on
// a tie): a worker's traceback printed just before the launcher reports the
// failure gets the report's time, not that of the last line an hour ago.
//
// # Wrappers
//
// Container runtimes wrap each line a program prints:
//
//	CRI (containerd, CRI-O):  2026-11-25T10:00:00.123456789Z stdout F message
//	                          (P instead of F marks a partial line; the next
//	                          record of the stream continues it)
//	Docker json-file:         {"log":"message\n","stream":"stdout","time":"2026-11-25T10:00:00.1Z"}
//	                          (a "log" without its trailing newline is partial)
//

// Journald and syslog put a prefix before each message:
//
//	short-iso-precise  2026-11-25T10:00:00.123456+0000 gpu-node-1 kernel: NVRM: Xid (PCI:0000:3b:00): 79, ...
//	short-iso          2026-11-25T10:00:00+00:00 gpu-node-1 python3[4242]: [rank3]: Traceback ...
//	short-precise      Nov 25 10:00:00.123456 gpu-node-1 kernel: ...
//	short (and BSD syslog files)  Nov 25 10:00:00 gpu-node-1 consumer[77]: ...
//	dmesg -T           [Tue Nov 25 10:00:00 2026] NVRM: Xid ...
//	-o json            {"__REALTIME_TIMESTAMP":"1795600800123456","_HOSTNAME":"gpu-node-1","SYSLOG_IDENTIFIER":"kernel","MESSAGE":"NVRM: ..."}
//
// (newer systemd writes the ISO zone as +00:00, older as +0000). The host
// becomes AttrHost, the identifier AttrUnit, the pid Event.PID. -o export
// (binary-safe KEY=value blocks) is read by ExportReader.
//
// # Group membership
//
// Group-membership lines of the Kafka Java client, librdkafka and torch
// elastic become traces.EventRebalance events (AttrClient, AttrGroup,
// AttrPhase and the attributes below). The analyzer (analyzers.Rebalances)
// turns them into rebalances.
//
// Kafka Java client, classic protocol (AbstractCoordinator,
// ConsumerCoordinator, ConsumerRebalanceListenerInvoker; every line
// prefixed "[Consumer clientId=C, groupId=G] ", with "instanceId=I, " first
// under static membership), all INFO:
//
//	Subscribed to topic(s): <topics>                            reset (a new consumer instance)
//	Request joining group due to: <reason>                      start (a member id in the reason is kept)
//	Revoke previously assigned partitions <list>                start (AttrPartitions)
//	Lost previously assigned partitions <list>                  start (session expired)
//	(Re-)joining group                                          start
//	Successfully joined group with generation Generation{generationId=N, memberId='M', protocol='P'}   step
//	Successfully synced group in generation Generation{...}     step
//	Adding newly assigned partitions: <list>                    end (AttrPartitions)
//	Member M sending LeaveGroup request to coordinator H (id: N rack: R) due to <reason>   leave
//
// and in the configuration dump at start-up "group.protocol = classic|consumer"
// and "partition.assignment.strategy = [class ...Assignor, ...]".
//
// Kafka Java client, consumer protocol (KIP-848; AbstractMembershipManager
// logs every state change at INFO, the listener invoker the partitions):
//
//	Member M with epoch E transitioned from A to B.             state (AttrFrom A, AttrTo B, AttrGeneration E)
//	Revoking previously assigned partitions <list>              start (AttrPartitions)
//	Adding newly assigned partitions: <list>                    end (AttrPartitions)
//
// librdkafka (debug=cgrp; the default logger prints
// "%7|<unix time>|<FACILITY>|<client name>| [thrd:main]: <message>"):
//
//	CGRPJOINSTATE  Group "G" changed join state A -> B (state S)   start when A is init (AttrFresh) or steady, end when B is steady, step when B is wait-join
//	JOINGROUP      JoinGroup response: GenerationId N, Protocol P, LeaderId L, my MemberId M, ...   step
//	REBALANCE, ASSIGN lines naming EAGER or COOPERATIVE             step, giving the strategy
//
// torch elastic (torch/distributed/elastic/agent/server/api.py and
// multiprocessing/api.py; the "[role]" is the agent's role, the group):
//
//	Sending process P closing signal SIGTERM                              start (reason signal): a worker is being stopped
//	failed (exitcode: X) local_rank: R (pid: P) of binary: B              start (reason worker_failed, exitcode, local_rank)
//	[role] Worker group FAILED. 2/3 attempts left; will restart worker group   start (reason failed, attempts_left)
//	[role] Detected 1 new nodes from group_rank=0; will restart worker group   start (reason new_nodes)
//	[role] Stopping worker group                                          start (reason stopping)
//	[role] Rendezvous complete for workers. Result: ... restart_count=N   step (restart_count may follow on the next lines)
//	[role] Starting worker group                                          end (AttrGeneration: the restart_count)
//
// A restart's downtime runs from its first start, the first worker
// stopped, to the end, the new worker group started.
//
// # Faults
//
// Fault lines, as the kernel driver, PyTorch and the CUDA runtime print them:
//
//	NVRM: Xid (PCI:0000:3b:00): 79, pid=1234, name=python3, GPU has fallen off the bus.
//	NVRM: GPU 0000:3b:00.0: GPU has fallen off the bus.
//	[Rank 3] Watchdog caught collective operation timeout: WorkNCCL(SeqNum=1024, OpType=ALLREDUCE, NumelIn=..., NumelOut=..., Timeout(ms)=600000) ran for 600042 milliseconds before timing out.
//	torch.distributed.DistBackendError: NCCL error in: .../ProcessGroupNCCL.cpp:1970, unhandled system error (run with NCCL_DEBUG=INFO for details), NCCL version 2.20.5
//	torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.11 GiB ...
//	RuntimeError: CUDA error: an illegal memory access was encountered
//	Traceback (most recent call last):
//	  File "/app/train.py", line 42, in <module>
//	    main()
//	ValueError: ...
//
// NCCL timeouts (nccl_watchdog), other NCCL failures (nccl_error) and
// crashes are told apart; when the exception that ends a traceback is
// itself one of these faults (an OOM, a CUDA or NCCL error), one event of
// that fault carries the stack, with AttrFatal "true", instead of a crash
// event beside it. An out-of-memory line that says the program retries
// gets AttrRetry "true". XIDs carry the code, AttrPCI and the pid and name
// the driver logged; the GPU index is left -1 for whoever knows the host's
// PCI addresses (the analyzers, from the manifest).
package logparse
