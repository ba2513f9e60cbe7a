// Command cluster is one multi-call binary for a local Kubernetes control plane:
// etcd, kube-apiserver, kube-controller-manager, kube-scheduler and the kubelet, each taken from its
// upstream module at the release pinned in go.mod. Linking them into one binary builds
// the shared dependencies once and links once.
//
// The component is chosen by the name the binary is called by (a symlink named
// kube-apiserver, ...) or, failing that, by the first argument:
//
//	cluster kube-apiserver --secure-port=6443 ...
//	cluster etcd --data-dir=...
//	cluster version
package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	_ "time/tzdata" // CronJob time zones, as upstream's kube-apiserver main

	"github.com/spf13/cobra"
	"go.etcd.io/etcd/server/v3/etcdmain"
	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"          // --logging-format=json, as upstream's mains
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // client-go metrics, as upstream's mains
	_ "k8s.io/component-base/metrics/prometheus/version"  // kubernetes_build_info, as upstream's mains
	"k8s.io/component-base/version"
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"
	kubelet "k8s.io/kubernetes/cmd/kubelet/app"
)

// cobraMain runs one of Kubernetes' cobra commands the way its upstream main does.
func cobraMain(newCommand func() *cobra.Command) func() int {
	return func() int { return cli.Run(newCommand()) }
}

var components = map[string]func() int{
	"kube-apiserver":          cobraMain(apiserver.NewAPIServerCommand),
	"kube-controller-manager": cobraMain(controllermanager.NewControllerManagerCommand),
	"kube-scheduler": cobraMain(func() *cobra.Command {
		return scheduler.NewSchedulerCommand()
	}),
	// The node agent (scripts/cluster/node.py), as upstream's cmd/kubelet main.
	"kubelet": cobraMain(func() *cobra.Command {
		return kubelet.NewKubeletCommand(context.Background())
	}),
	"etcd": func() int {
		etcdmain.Main(os.Args) // exits by itself
		return 0
	},
	"version": func() int {
		fmt.Println(version.Get().GitVersion)
		return 0
	},
}

func names() []string {
	var out []string
	for name := range components {
		out = append(out, name)
	}
	sort.Strings(out)
	return out
}

func main() {
	name := filepath.Base(os.Args[0])
	run, ok := components[name]
	if !ok {
		if len(os.Args) < 2 {
			fmt.Fprintf(os.Stderr, "usage: %s COMPONENT [flags]; components: %v\n", name, names())
			os.Exit(2)
		}
		name = os.Args[1]
		if run, ok = components[name]; !ok {
			fmt.Fprintf(os.Stderr, "%s: unknown component %q; components: %v\n", filepath.Base(os.Args[0]), name, names())
			os.Exit(2)
		}
		// The component sees itself as argv[0] and only its own flags after it.
		os.Args = append([]string{name}, os.Args[2:]...)
	}
	os.Exit(run())
}
