"""Pure vision algorithms (no Triton): tank level, tank fill, pose engine, tracking, fall, zones, PPE."""

#: Bound on any pixel coordinate or radius a CONFIG may hold: well above the largest frame the runtime admits
#: (validation.Limits: 7680x4320), small enough that no algorithm meets an overflow or a minutes-long loop.
MAX_COORD_PX = 16384.0
