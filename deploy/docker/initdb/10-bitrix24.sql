-- The warehouse and the state store live beside Dagster's storage, in a database of their own.
CREATE DATABASE bitrix24;
