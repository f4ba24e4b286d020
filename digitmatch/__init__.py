"""digitmatch: is this spoken digit the same number as this handwritten one?"""

__version__ = "0.1.0"
