"""Preventive safeguards that act before an action.

* ``impact``: impact penalty, a bias toward leaving the world as inaction would have left it;
* ``shield``: lookahead shield, each proposed action scored on a copy of the simulator first;
* ``quantilizer``: sample from the top q of a trusted base distribution of actions instead of the argmax.
"""
