// Package deploy holds Loupe's deployment files: systemd units, the Helm
// chart and the Kubernetes manifests rendered from it, and the container
// files. Its tests verify them with systemd-analyze and decode every
// Kubernetes object strictly into the k8s.io/api types.
package deploy
