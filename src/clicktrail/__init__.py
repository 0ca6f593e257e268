"""clicktrail: email message tracking from tracking-server and MTA logs."""

__version__ = "0.1.0"
