"""vocos model family."""
