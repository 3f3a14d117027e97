"""The one training loop and what it stands on: the optimizer and schedule, the device and precision, batching,
and the files a run writes."""
