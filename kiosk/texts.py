"""What the display says, in French (the default) and English.

Each text is a pair of display lines with `str.format` fields. Keep lines within 20 columns where
the fields allow it; the display cuts longer lines.
"""

from __future__ import annotations

from typing import Any

TEXTS: dict[str, dict[str, tuple[str, str]]] = {
    "fr": {
        "starting": ("Démarrage...", ""),
        "idle": ("Bonjour ! {coins} c", "Monnaie non rendue"),
        "credit": ("Crédit : {credit} c", "Choisissez"),
        "price": ("{product}", "Prix : {price} c"),
        "missing": ("Il manque {missing} c", "{product} {price} c"),
        "sold_out": ("{product}", "Épuisé"),
        "unavailable": ("{product}", "Indisponible"),
        "vending": ("Distribution...", "{product}"),
        "thanks": ("Merci !", "Prenez {product}"),
        "vend_failed": ("Pas de produit", "Crédit gardé {credit} c"),
        "kept": ("Crédit gardé", "{credit} c"),
        "donating": ("Don {credit} c dans {seconds}s", "à {beneficiary}"),
        "donated": ("Merci pour le don", "à {beneficiary}"),
        "out_of_service": ("Hors service", "{reason}"),
        "maintenance": ("Maintenance", "Porte ouverte"),
        "service": ("Maintenance", "Service en cours"),
        "offer": ("{product}", "{price} c"),
        "saved": ("{count} pièces", "sauvées, merci !"),
        "saved_one": ("1 pièce", "sauvée, merci !"),
        "wait": ("Veuillez patienter", ""),
    },
    "en": {
        "starting": ("Starting...", ""),
        "idle": ("Hello! {coins} c", "No change given"),
        "credit": ("Credit: {credit} c", "Make a choice"),
        "price": ("{product}", "Price: {price} c"),
        "missing": ("{missing} c missing", "{product} {price} c"),
        "sold_out": ("{product}", "Sold out"),
        "unavailable": ("{product}", "Unavailable"),
        "vending": ("Dispensing...", "{product}"),
        "thanks": ("Thank you!", "Take your {product}"),
        "vend_failed": ("No product", "Credit kept {credit} c"),
        "kept": ("Credit kept", "{credit} c"),
        "donating": ("Gift {credit} c in {seconds}s", "to {beneficiary}"),
        "donated": ("Thanks for the gift", "to {beneficiary}"),
        "out_of_service": ("Out of service", "{reason}"),
        "maintenance": ("Maintenance", "Door open"),
        "service": ("Maintenance", "Service under way"),
        "offer": ("{product}", "{price} c"),
        "saved": ("{count} coins", "saved, thank you!"),
        "saved_one": ("1 coin", "saved, thank you!"),
        "wait": ("Please wait", ""),
    },
}

REASONS: dict[str, dict[str, str]] = {
    "fr": {
        "sold_out": "Tout est épuisé",
        "drop_sensor": "Capteur de chute",
        "coin_acceptor": "Monnayeur",
        "internal_error": "Erreur interne",
        "storage": "Stockage",
    },
    "en": {
        "sold_out": "All sold out",
        "drop_sensor": "Drop sensor",
        "coin_acceptor": "Coin acceptor",
        "internal_error": "Internal error",
        "storage": "Storage",
    },
}


def text(language: str, key: str, **fields: Any) -> tuple[str, str]:
    line1, line2 = TEXTS[language][key]
    return line1.format(**fields), line2.format(**fields)


def count(language: str, number: int) -> str:
    """A count as people write it: 1 234 in French, 1,234 in English."""
    grouped = f"{number:,}"
    return grouped.replace(",", " ") if language == "fr" else grouped


def reason(language: str, code: str) -> str:
    return REASONS[language].get(code, code)
