"""sweep: search Balanced Actor Initialization merge ratios against capability and RL stability.

Importing this package is cheap: it pulls in none of Ray, lm-eval or vLLM.
"""

__version__ = "0.1.0"
