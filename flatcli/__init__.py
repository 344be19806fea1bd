"""flatcli: robust overfitting and flatness of the robust loss (Stutz, Hein & Schiele, ICCV 2021).

Only the version lives here, so that `flatcli --help` answers without importing torch.
"""

__version__ = "0.1.0"
