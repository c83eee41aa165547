"""The Ray batch job: manifests, one row's inputs, results, the Ray Data job and its fit actor."""
