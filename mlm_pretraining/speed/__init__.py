"""The speed-ups, each behind one flag of SpeedArguments: the sparse prediction head and its fused loss, fast CPU
dropout, kept CPU memory, and the precision advice."""
