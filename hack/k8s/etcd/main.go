// Command etcd is etcd's own server entry point, built from the etcd release that the pinned
// k8s.io/kubernetes module requires, so the control plane's etcd matches what its apiserver is tested with.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
