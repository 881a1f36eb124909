"""The streaming daemon behind ``edge-asd listen``: streams, the scoring pipeline, start-up."""
