"""The data sets (where each file comes from, its readers) and the metrics they are scored with."""
