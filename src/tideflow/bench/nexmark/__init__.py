"""NEXMark: the standard streaming benchmark's generator and queries, as tideflow pipelines."""
