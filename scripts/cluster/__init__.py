"""A local Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler)
built from the upstream modules of one pinned release: see scripts/cluster/__main__.py."""
