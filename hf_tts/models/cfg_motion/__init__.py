"""cfg_motion model family."""
