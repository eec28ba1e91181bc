"""Portals are dynamic partitions: the sensor adds one when an app install is recorded."""

import dagster as dg

portals = dg.DynamicPartitionsDefinition(name="bitrix24_portal")
