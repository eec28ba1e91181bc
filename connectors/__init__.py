"""Source and destination sides of the Bitrix24 → warehouse connector (no Dagster here)."""
