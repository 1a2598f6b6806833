"""Model cards and push helpers (client side); the registry server is `hf_tts.registry`."""
