package analyzers

// All is the registry: every analyzer Loupe runs, one line per analyzer,
// in the order reports list them. A new analyzer is a new file plus one
// line here.
var All = []*Analyzer{
	SMUnderuse,
	TensorUnderuse,
	MemoryBound,
	NCCLStraggler,
	NCCLHang,
	StepImbalance,
	Throttle,
	HWFaults,
	InputBound,
	KinetoTemporal,
	KinetoKernels,
	KinetoIdle,
	KinetoLaunch,
	KinetoOverlap,
	Warmup,
	Rebalance,
}
