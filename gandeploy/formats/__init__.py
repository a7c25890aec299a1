"""What gandeploy writes and reads: the manifest schema, file names, the generator spec, reference outputs, the
parity definition, the uint8 conversion and label checks. json + numpy only: every other layer builds on this one."""
