"""Preventive safeguards that act before an action.

* ``impact``: impact penalty, a bias toward leaving the world as inaction would have left it;
* ``shield``: lookahead shield, each proposed action scored on a model of the world first (``models``,
  ``model_kinds``: a designer's simulator, a learned model, or the labelled oracle copy), against a calibrated
  floor on one step's increment (``bound``);
* ``quantilizer``: sample from the top q of a trusted base distribution of actions instead of the argmax.
"""
