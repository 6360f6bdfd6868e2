"""Profile homogenization analytics: how indistinguishable are companies' staff headshots becoming?

The modules follow the data flow of DESIGN.md: sources → intake → (embed → index → analyze → report),
with `warehouse` holding every output and `config` the one validated settings object.
"""

__version__ = "0.1.0"
