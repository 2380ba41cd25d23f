"""Swagger UI's own files, served locally so ``/docs`` works with no internet."""

from __future__ import annotations

from flask import Blueprint
from swagger_ui_bundle import swagger_ui_path

ASSETS_URL = "/docs/assets"

bp = Blueprint(
    "swagger_assets", __name__, static_folder=str(swagger_ui_path), static_url_path=ASSETS_URL
)
