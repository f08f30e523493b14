"""ptgym: a gym for post-training language models with reinforcement learning.

Importing ptgym registers the built-in envs with Gymnasium (``gymnasium.make("ptgym/Math-v0")``)
and stays light: no torch, no textual.
"""

from ptgym.env import TextEnv
from ptgym.registry import make, register, specs
from ptgym.types import Action, Message, ToolCall, Trajectory, Turn

__version__ = "0.1.0"
__all__ = [
    "Action",
    "Message",
    "TextEnv",
    "ToolCall",
    "Trajectory",
    "Turn",
    "make",
    "register",
    "specs",
]
