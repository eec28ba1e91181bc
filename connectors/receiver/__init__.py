"""The app's HTTP receiver: install callback, push signals (ONOFFLINEEVENT), uninstall."""

from connectors.receiver.app import ReceiverSettings, bracket_form, create_app, portal_key

__all__ = ["ReceiverSettings", "bracket_form", "create_app", "portal_key"]
