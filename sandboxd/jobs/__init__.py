"""The job that orders a request's phases (build, run, fmt, vet) and ends it, what is prepared
ahead of a request, the binary cache, single-flight and the submit seam every face uses."""
