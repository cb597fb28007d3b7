"""What people look at: pictures of anomaly maps, metric tables, prediction files and
method comparisons."""
