"""Small helpers several layers share: durable (fsynced) file writes, human-readable durations."""
