"""Pure vision algorithms (no Triton): tank level, tank fill, pose engine, tracking, fall, zones, PPE."""
