"""Legacy devices the core itself needs (the i8042 reset line, the pvpanic port)."""
