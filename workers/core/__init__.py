"""The torch-free core both planes stand on: a run's spec and key, argument schemas and one card per registered
name (workers/core/schemas/), URIs, the store, class names and the errors. It imports nothing of the project above it, and
neither torch nor Ray: `vpgrid plan` and `status` start fast, and the data plane reads and writes the store
without the control plane."""
