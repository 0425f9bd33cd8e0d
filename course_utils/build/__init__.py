"""Build machinery, not course material: the papermill pipeline, the exercise generator, metric
recording and the benchmark. Chapters import nothing from here except ``results.record_metrics``,
in cells hidden from the book."""
