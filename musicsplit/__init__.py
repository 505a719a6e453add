"""musicsplit: music source separation served as a monitored, versioned platform."""

__version__ = "0.1.0"
