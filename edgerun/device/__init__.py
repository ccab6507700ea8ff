"""The device: machine facts, device profiles (data in profiles/), their detection and the profile
a run resolves to."""
