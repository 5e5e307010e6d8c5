package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/loupe-dev/loupe/analyzers"
)

// kinetoFlags are analyze's switches for the Kineto analyses.
type kinetoFlags struct {
	launchAPIs *string
	report     *bool
}

func addKinetoFlags(fs *flag.FlagSet) *kinetoFlags {
	return &kinetoFlags{
		launchAPIs: fs.String("launch-apis", "hta", "kernel launches the Kineto launch statistics count: `hta` (cudaLaunchKernel, cudaLaunchKernelExC and the memory calls, as HTA counts them) or extended (also cuLaunchKernel, cuLaunchKernelEx, cudaGraphLaunch)"),
		report:     fs.Bool("report", false, "also print every Kineto rank's and every stream's numbers (temporal breakdown, idle time per stream, launch statistics, overlap), not only those past a finding threshold"),
	}
}

// options checks the flags and returns the Kineto options they ask for.
func (k *kinetoFlags) options() (*analyzers.KinetoOptions, error) {
	opts := analyzers.DefaultKinetoOptions()
	switch *k.launchAPIs {
	case "hta":
	case "extended":
		opts.ExtendedLaunchAPIs = true
	default:
		return nil, usageErr("--launch-apis %q: want hta or extended", *k.launchAPIs)
	}
	return &opts, nil
}

// kinetoReport measures every Kineto trace of in for the report; nil when
// the report is off or the capture has none.
func (k *kinetoFlags) kinetoReport(ctx context.Context, in *analyzers.Input) ([]*analyzers.KinetoRank, error) {
	if !*k.report {
		return nil, nil
	}
	return analyzers.KinetoSummaries(ctx, in, in.KinetoOptions())
}

// printKinetoReport writes every rank's and stream's numbers, in HTA's
// units (microseconds, percentages to 2 decimals).
func printKinetoReport(w io.Writer, ranks []*analyzers.KinetoRank) {
	if len(ranks) == 0 {
		return
	}
	us := func(d time.Duration) string { return fmt.Sprint(d.Microseconds()) }
	fmt.Fprintln(w, "  Kineto report (times in us)")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "  RANK\tKERNEL_TIME\tIDLE\tCOMPUTE\tNON_COMPUTE\tCOMMUNICATION\tMEMORY\tIDLE%\tCOMPUTE%\tNON_COMPUTE%\tOVERLAP%\tLAUNCHES\tSHORT\tDELAY_OUTLIERS\tRUNTIME_OUTLIERS\t")
	for _, r := range ranks {
		b, l := r.Temporal, r.Launch
		fmt.Fprintf(tw, "  %d\t%s\t%s\t%s\t%s\t%s\t%s\t%.2f\t%.2f\t%.2f\t%.2f\t%d\t%d\t%d\t%d\t\n", r.Rank, us(b.Span), us(b.Idle), us(b.Compute),
			us(b.NonCompute), us(b.Communication), us(b.Memory), b.Pct(b.Idle), b.Pct(b.Compute), b.Pct(b.NonCompute),
			analyzers.RoundPct(r.Overlap.Ratio()), l.Launches, l.ShortKernels, l.DelayOutliers, l.RuntimeOutliers)
	}
	tw.Flush()
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "  RANK\tSTREAM\tKERNELS\tHOST_WAIT\tKERNEL_WAIT\tOTHER\tHOST_WAIT_RATIO\tKERNEL_WAIT_RATIO\tOTHER_RATIO\t")
	for _, r := range ranks {
		for _, s := range r.Streams {
			ratio := func(d time.Duration) float64 {
				if s.Idle() <= 0 {
					return 0
				}
				return analyzers.RoundPct(float64(d)/float64(s.Idle())) / 100
			}
			fmt.Fprintf(tw, "  %d\t%d\t%d\t%s\t%s\t%s\t%.2f\t%.2f\t%.2f\t\n", r.Rank, s.Stream, s.Kernels, us(s.HostWait), us(s.KernelWait), us(s.Other),
				ratio(s.HostWait), ratio(s.KernelWait), ratio(s.Other))
		}
	}
	tw.Flush()
}
