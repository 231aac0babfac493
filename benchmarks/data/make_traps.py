"""Write ``traps.jsonl``: labelled question pairs that fool embeddings, and paraphrases.

    python benchmarks/data/make_traps.py            # rewrites benchmarks/data/traps.jsonl

Original work of the haikucache developers (Apache-2.0, see README.md beside this file): every
frame below was written for this project; nothing is copied from a third-party data set.

A *frame* is one question written two or three ways (its *variants*, which mean the same) with
a slot, and the fills that make it mean different things: ``open``/``closed``, ``from X to Y``
/ ``from Y to X``, ``under``/``over``. From a frame come

* ``minimal`` traps: the same variant with each fill (only the contrast differs);
* ``reworded`` traps: one variant with one fill, another variant with the other fill;
* ``paraphrase`` pairs (label ``same``): two variants with the same fill, which must hit.

A pair is ``{"id", "a", "b", "label": "same" | "different", "category", "style", "domain",
"frame", "split": "dev" | "heldout"}``: the cache holds ``a``, the user asks ``b``. About 20 %
of the frames of every category (chosen with a fixed seed) are held out: their pairs are
never used to tune anything and are reported apart.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

SEED = 20261207
HELDOUT_SHARE = 0.2
OUT = Path(__file__).resolve().parent / "traps.jsonl"


@dataclass(frozen=True)
class Frame:
    """One question, its variants (``{a}``, or ``{x}`` and ``{y}`` for a direction), its fills."""

    category: str
    domain: str
    variants: tuple[str, ...]
    fills: tuple[tuple[str, str], ...]


def F(category: str, domain: str, variants: list[str], fills: list[tuple[str, str]]) -> Frame:
    return Frame(category, domain, tuple(variants), tuple(fills))


FRAMES: list[Frame] = [
    # ------------------------------------------------------------------ antonyms
    F(
        "antonym",
        "airline",
        [
            "Is the check-in desk {a} two hours before departure?",
            "Two hours before departure, is the check-in desk {a}?",
            "Will the check-in counter be {a} two hours before my flight leaves?",
        ],
        [("open", "closed")],
    ),
    F(
        "antonym",
        "airline",
        [
            "Are pets {a} in the cabin on this flight?",
            "On this flight, are pets {a} in the cabin?",
        ],
        [("allowed", "banned"), ("permitted", "prohibited")],
    ),
    F(
        "antonym",
        "airline",
        [
            "Is seat selection {a} in the basic fare?",
            "With the basic fare, is seat selection {a}?",
        ],
        [("included", "excluded")],
    ),
    F(
        "antonym",
        "airline",
        [
            "Can I {a} my seat after online check-in?",
            "After checking in online, can I {a} my seat?",
        ],
        [("upgrade", "downgrade")],
    ),
    F(
        "antonym",
        "airline",
        [
            "Where is the {a} hall at terminal 5?",
            "At terminal 5, where can I find the {a} hall?",
        ],
        [("arrivals", "departures")],
    ),
    F(
        "antonym",
        "banking",
        [
            "Is it safe to {a} cash at an ATM abroad?",
            "When I am abroad, is it safe to {a} cash at a cash machine?",
        ],
        [("withdraw", "deposit")],
    ),
    F(
        "antonym",
        "banking",
        [
            "Why was my card payment {a}?",
            "What is the reason my card payment was {a}?",
            "Why has my card payment been {a}?",
        ],
        [("approved", "declined"), ("accepted", "rejected")],
    ),
    F(
        "antonym",
        "banking",
        [
            "Will this show as a {a} on my bank statement?",
            "On my bank statement, will this appear as a {a}?",
        ],
        [("credit", "debit")],
    ),
    F(
        "antonym",
        "banking",
        [
            "Is this a {a} rate mortgage?",
            "Does this mortgage have a {a} rate?",
        ],
        [("fixed", "variable")],
    ),
    F(
        "antonym",
        "banking",
        [
            "How do I {a} shares in my investment account?",
            "In my investment account, how can I {a} shares?",
        ],
        [("buy", "sell")],
    ),
    F(
        "antonym",
        "health",
        [
            "Does coffee {a} blood pressure?",
            "Can drinking coffee {a} my blood pressure?",
            "Is it true that coffee can {a} blood pressure?",
        ],
        [("raise", "lower"), ("increase", "decrease")],
    ),
    F(
        "antonym",
        "health",
        [
            "Is the walk-in clinic {a} on bank holidays?",
            "On bank holidays, is the walk-in clinic {a}?",
        ],
        [("open", "closed")],
    ),
    F(
        "antonym",
        "health",
        [
            "Is it {a} to exercise when I have a cold?",
            "When I have a cold, is exercising {a}?",
        ],
        [("good", "bad"), ("safe", "dangerous")],
    ),
    F(
        "antonym",
        "health",
        [
            "Is ibuprofen {a} to take with alcohol?",
            "Is it {a} to drink alcohol while taking ibuprofen?",
            "Is taking ibuprofen with alcohol {a}?",
        ],
        [("safe", "dangerous")],
    ),
    F(
        "antonym",
        "software",
        [
            "How do I {a} two-factor authentication on my account?",
            "What are the steps to {a} two-factor authentication on my account?",
            "How can I {a} 2FA for my account?",
        ],
        [("enable", "disable"), ("turn on", "turn off")],
    ),
    F(
        "antonym",
        "software",
        [
            "How do I make my GitHub repository {a}?",
            "How can I set my GitHub repository to {a}?",
        ],
        [("public", "private")],
    ),
    F(
        "antonym",
        "software",
        [
            "How do I {a} a file on the shared drive?",
            "What is the way to {a} a file on the shared drive?",
        ],
        [("upload", "download")],
    ),
    F(
        "antonym",
        "software",
        [
            "How do I {a} a folder on Linux?",
            "On Linux, how can I {a} a folder?",
        ],
        [("compress", "decompress"), ("encrypt", "decrypt")],
    ),
    F(
        "antonym",
        "software",
        [
            "How do I convert a string to {a} in Python?",
            "In Python, how can I turn a string into {a}?",
        ],
        [("uppercase", "lowercase")],
    ),
    F(
        "antonym",
        "software",
        [
            "How do I sort a list in {a} order?",
            "What is the way to sort a list in {a} order?",
        ],
        [("ascending", "descending")],
    ),
    F(
        "antonym",
        "software",
        [
            "How do I {a} the read replica in the console?",
            "In the console, how do I {a} the read replica?",
        ],
        [("start", "stop")],
    ),
    F(
        "antonym",
        "retail",
        [
            "Is the store {a} on Sunday mornings?",
            "On Sunday mornings, is the shop {a}?",
            "Will the store be {a} on Sunday morning?",
        ],
        [("open", "closed")],
    ),
    F(
        "antonym",
        "retail",
        [
            "Can I {a} an item I bought in the sale?",
            "Is it possible to {a} items bought in the sale?",
        ],
        [("return", "exchange")],
    ),
    F(
        "antonym",
        "retail",
        [
            "Are these headphones {a}?",
            "Are the headphones you sell {a}?",
        ],
        [("new", "refurbished"), ("new", "used")],
    ),
    F(
        "antonym",
        "retail",
        [
            "Is the warranty {a} if I open the box?",
            "If I open the box, is the warranty still {a}?",
        ],
        [("valid", "void")],
    ),
    F(
        "antonym",
        "retail",
        [
            "Is gift wrapping {a} in the price?",
            "Does the price have gift wrapping {a}?",
        ],
        [("included", "excluded")],
    ),
    F(
        "antonym",
        "travel",
        [
            "Is breakfast {a} in the room rate?",
            "Does the room rate have breakfast {a}?",
            "Is breakfast {a} in the price of the room?",
        ],
        [("included", "excluded")],
    ),
    F(
        "antonym",
        "travel",
        [
            "Is the hotel pool {a} in winter?",
            "In winter, is the hotel swimming pool {a}?",
        ],
        [("open", "closed"), ("heated", "unheated")],
    ),
    F(
        "antonym",
        "travel",
        [
            "Is the old town {a} at night?",
            "At night, is the old town {a}?",
        ],
        [("safe", "dangerous"), ("busy", "quiet")],
    ),
    F(
        "antonym",
        "travel",
        [
            "What time is {a} at the hotel?",
            "At the hotel, what time is {a}?",
        ],
        [("check-in", "check-out")],
    ),
    F(
        "antonym",
        "travel",
        [
            "Which exit of the station is {a} to the beach?",
            "Is the {a} exit of the station near the beach?",
        ],
        [("north", "south"), ("east", "west")],
    ),
    F(
        "antonym",
        "insurance",
        [
            "Does my premium go {a} after a claim?",
            "After a claim, will my premium go {a}?",
        ],
        [("up", "down")],
    ),
    F(
        "antonym",
        "insurance",
        [
            "Is flood damage {a} by the standard policy?",
            "Under the standard policy, is flood damage {a}?",
        ],
        [("covered", "excluded")],
    ),
    F(
        "antonym",
        "hr",
        [
            "Is overtime {a} for salaried staff?",
            "For salaried staff, is overtime {a}?",
        ],
        [("paid", "unpaid"), ("mandatory", "optional")],
    ),
    F(
        "antonym",
        "hr",
        [
            "How do I {a} a new employee in the payroll system?",
            "In the payroll system, how can I {a} a new employee?",
        ],
        [("add", "remove")],
    ),
    F(
        "antonym",
        "telecom",
        [
            "How do I {a} data roaming on my phone?",
            "On my phone, how can I {a} data roaming?",
        ],
        [("activate", "deactivate"), ("enable", "disable")],
    ),
    # ------------------------------------------------------------------ negating prefixes
    F(
        "prefix",
        "airline",
        [
            "Is my economy ticket {a}?",
            "Can you tell me if my economy ticket is {a}?",
            "Is the economy ticket I bought {a}?",
        ],
        [("refundable", "non-refundable"), ("transferable", "non-transferable")],
    ),
    F(
        "prefix",
        "airline",
        [
            "Is it {a} to change the name on a booking?",
            "Changing the name on a booking, is that {a}?",
        ],
        [("possible", "impossible")],
    ),
    F(
        "prefix",
        "retail",
        [
            "Why is this jacket {a} in my size?",
            "In my size, why is this jacket {a}?",
        ],
        [("available", "unavailable")],
    ),
    F(
        "prefix",
        "retail",
        [
            "Why is my promo code {a}?",
            "How come my promo code is {a}?",
        ],
        [("valid", "invalid")],
    ),
    F(
        "prefix",
        "retail",
        [
            "What can I do if I am {a} with my order?",
            "If I am {a} with my order, what can I do?",
        ],
        [("satisfied", "dissatisfied")],
    ),
    F(
        "prefix",
        "travel",
        [
            "Is it {a} to fly a drone in the city park?",
            "In the city park, is flying a drone {a}?",
        ],
        [("legal", "illegal")],
    ),
    F(
        "prefix",
        "travel",
        [
            "Is the metro {a} for wheelchair users?",
            "For wheelchair users, is the metro {a}?",
        ],
        [("accessible", "inaccessible")],
    ),
    F(
        "prefix",
        "health",
        [
            "Is my {a} heartbeat something to worry about?",
            "Should I worry about my {a} heartbeat?",
        ],
        [("regular", "irregular")],
    ),
    F(
        "prefix",
        "health",
        [
            "Is this ingredient {a} for dogs?",
            "For dogs, is this ingredient {a}?",
        ],
        [("harmful", "harmless")],
    ),
    F(
        "prefix",
        "health",
        [
            "Is a root canal {a}?",
            "Is having a root canal {a}?",
        ],
        [("painful", "painless")],
    ),
    F(
        "prefix",
        "health",
        [
            "Is the flu vaccine {a} for young children?",
            "For young children, is the flu vaccine {a}?",
        ],
        [("suitable", "unsuitable")],
    ),
    F(
        "prefix",
        "banking",
        [
            "How do I report an {a} transaction?",
            "What is the way to report an {a} transaction?",
        ],
        [("authorised", "unauthorised")],
    ),
    F(
        "prefix",
        "banking",
        [
            "Am I {a} for a refund of the overdraft fee?",
            "For a refund of the overdraft fee, am I {a}?",
        ],
        [("eligible", "ineligible")],
    ),
    F(
        "prefix",
        "banking",
        [
            "How do I {a} my debit card in the app?",
            "In the app, how can I {a} my debit card?",
            "What are the steps to {a} my debit card in the app?",
        ],
        [("freeze", "unfreeze"), ("lock", "unlock")],
    ),
    F(
        "prefix",
        "banking",
        [
            "Is this side income {a}?",
            "Is the income from my side job {a}?",
        ],
        [("taxable", "non-taxable")],
    ),
    F(
        "prefix",
        "software",
        [
            "Why does my VPN show as {a}?",
            "How come my VPN shows as {a}?",
        ],
        [("connected", "disconnected")],
    ),
    F(
        "prefix",
        "software",
        [
            "How do I {a} the printer driver on Windows?",
            "On Windows, how can I {a} the printer driver?",
        ],
        [("install", "uninstall")],
    ),
    F(
        "prefix",
        "software",
        [
            "Is this website connection {a}?",
            "Is my connection to this website {a}?",
        ],
        [("secure", "insecure")],
    ),
    F(
        "prefix",
        "software",
        [
            "Is the latest beta release {a}?",
            "Is the newest beta {a}?",
        ],
        [("stable", "unstable")],
    ),
    F(
        "prefix",
        "software",
        [
            "Is this keyboard {a}?",
            "Is the keyboard in this bundle {a}?",
        ],
        [("wired", "wireless")],
    ),
    F(
        "prefix",
        "hr",
        [
            "What happens if I {a} with my performance review?",
            "If I {a} with my performance review, what happens?",
        ],
        [("agree", "disagree")],
    ),
    F(
        "prefix",
        "insurance",
        [
            "Is my claim {a}?",
            "Has my claim been {a}?",
        ],
        [("approved", "disapproved")],
    ),
    F(
        "prefix",
        "telecom",
        [
            "Why am I {a} to make calls abroad?",
            "How come I am {a} to make calls abroad?",
        ],
        [("able", "unable")],
    ),
    # ------------------------------------------------------------------ negation scope
    F(
        "negation",
        "banking",
        [
            "What happens if I {a} pay my credit card bill on time?",
            "If I {a} pay my credit card bill on time, what happens?",
        ],
        [("", "don't"), ("", "never")],
    ),
    F(
        "negation",
        "health",
        [
            "What foods should I {a} with high cholesterol?",
            "With high cholesterol, which foods should I {a}?",
        ],
        [("eat", "avoid")],
    ),
    F(
        "negation",
        "health",
        [
            "{a} ibuprofen if I have asthma?",
            "If I have asthma, {a} ibuprofen?",
        ],
        [("can I take", "should I avoid")],
    ),
    F(
        "negation",
        "health",
        [
            "Should I {a} caffeine during pregnancy?",
            "During pregnancy, should I {a} caffeine?",
        ],
        [("drink", "avoid"), ("keep drinking", "stop drinking")],
    ),
    F(
        "negation",
        "health",
        [
            "Should this medicine be taken {a} food?",
            "Do I take this medicine {a} food?",
        ],
        [("with", "without")],
    ),
    F(
        "negation",
        "travel",
        [
            "Can I travel {a} a passport within the EU?",
            "Within the EU, can I travel {a} a passport?",
        ],
        [("with", "without")],
    ),
    F(
        "negation",
        "travel",
        [
            "Do I need a transit visa if I {a} leave the airport?",
            "If I {a} leave the airport, do I need a transit visa?",
        ],
        [("", "don't")],
    ),
    F(
        "negation",
        "airline",
        [
            "Can I board with {a} checked bag?",
            "Is it possible to board with {a} checked bag?",
        ],
        [("a", "no")],
    ),
    F(
        "negation",
        "airline",
        [
            "What should I do if my bag {a} arrive on the carousel?",
            "If my bag {a} arrive on the carousel, what should I do?",
        ],
        [("does", "doesn't")],
    ),
    F(
        "negation",
        "software",
        [
            "Why {a} my cron job run at midnight?",
            "How come my cron job {a} run at midnight?",
        ],
        [("does", "doesn't"), ("does", "does not")],
    ),
    F(
        "negation",
        "software",
        [
            "How do I {a} automatic updates on Windows?",
            "On Windows, how do I {a} automatic updates?",
        ],
        [("allow", "stop"), ("keep", "prevent")],
    ),
    F(
        "negation",
        "retail",
        [
            "Which items {a} be returned after 30 days?",
            "After 30 days, which items {a} be returned?",
        ],
        [("can", "cannot"), ("can", "can't")],
    ),
    F(
        "negation",
        "retail",
        [
            "Are all fees refunded {a} the delivery charge?",
            "Is every fee refunded {a} the delivery charge?",
        ],
        [("including", "except")],
    ),
    F(
        "negation",
        "banking",
        [
            "Is it {a} safe to share my PIN with bank staff?",
            "Is sharing my PIN with bank staff {a} safe?",
        ],
        [("ever", "never")],
    ),
    F(
        "negation",
        "hr",
        [
            "Do I get paid if I {a} work on a bank holiday?",
            "If I {a} work on a bank holiday, do I get paid?",
        ],
        [("", "do not")],
    ),
    F(
        "negation",
        "insurance",
        [
            "Is my claim valid if I {a} report the theft to the police?",
            "If I {a} report the theft to the police, is my claim valid?",
        ],
        [("", "didn't")],
    ),
    # ------------------------------------------------------------------ direction and order
    F(
        "direction",
        "banking",
        [
            "How do I transfer money from my {x} account to my {y} account?",
            "How can I move money to my {y} account from my {x} account?",
            "What is the way to transfer funds from {x} to {y}?",
        ],
        [("savings", "current"), ("checking", "savings"), ("joint", "personal")],
    ),
    F(
        "direction",
        "software",
        [
            "How do I convert a {x} file to {y}?",
            "What is the easiest way to turn a {x} file into {y}?",
            "How can I convert {x} to {y}?",
        ],
        [("Word", "PDF"), ("CSV", "JSON"), ("PNG", "JPG")],
    ),
    F(
        "direction",
        "software",
        [
            "How do I migrate a database from {x} to {y}?",
            "What is the best way to move my database from {x} to {y}?",
            "Migrating from {x} to {y}: how do I do it?",
        ],
        [("MySQL", "Postgres"), ("SQLite", "MySQL")],
    ),
    F(
        "direction",
        "software",
        [
            "How do I copy photos from my {x} to my {y}?",
            "How can I copy photos to my {y} from my {x}?",
        ],
        [("laptop", "phone"), ("camera", "tablet")],
    ),
    F(
        "direction",
        "airline",
        [
            "How long is the flight from {x} to {y}?",
            "What is the flight time from {x} to {y}?",
            "Flying to {y} from {x}, how long does it take?",
        ],
        [("London", "Madrid"), ("Paris", "Rome")],
    ),
    F(
        "direction",
        "airline",
        [
            "Can I change my seat from {x} to {y}?",
            "Is it possible to switch my seat from {x} to {y}?",
        ],
        [("aisle", "window")],
    ),
    F(
        "direction",
        "travel",
        [
            "How do I get from the {x} to the {y}?",
            "What is the best way to go from the {x} to the {y}?",
            "What is the best route to the {y} from the {x}?",
        ],
        [("airport", "city centre"), ("station", "hotel")],
    ),
    F(
        "direction",
        "travel",
        [
            "What is the exchange rate from {x} to {y}?",
            "How do I convert {x} to {y} at a good rate?",
        ],
        [("euros", "dollars"), ("pounds", "yen")],
    ),
    F(
        "direction",
        "travel",
        [
            "Is the {x} faster than the {y} to the coast?",
            "To get to the coast, is the {x} quicker than the {y}?",
        ],
        [("train", "bus"), ("ferry", "plane")],
    ),
    F(
        "direction",
        "health",
        [
            "Can I switch from {x} to {y} for back pain?",
            "For back pain, is it okay to change from {x} to {y}?",
        ],
        [("ibuprofen", "paracetamol"), ("tablets", "injections")],
    ),
    F(
        "direction",
        "health",
        [
            "Should I {x} before I {y}?",
            "Is it better to {x} before I {y}?",
        ],
        [("eat", "exercise"), ("stretch", "run")],
    ),
    F(
        "direction",
        "retail",
        [
            "Can I switch my subscription from {x} to {y}?",
            "How can I change my subscription from {x} to {y}?",
        ],
        [("monthly", "annual"), ("basic", "premium")],
    ),
    F(
        "direction",
        "telecom",
        [
            "How do I move my number from {x} to {y}?",
            "How can I port my number from {x} to {y}?",
        ],
        [("Vodafone", "O2"), ("prepaid", "contract")],
    ),
    F(
        "direction",
        "hr",
        [
            "Is a {x} paid more than a {y}?",
            "Does a {x} earn more than a {y}?",
        ],
        [("nurse", "teacher"), ("developer", "designer")],
    ),
    # ------------------------------------------------------------------ comparatives
    F(
        "comparative",
        "retail",
        [
            "Is delivery free for orders {a} £50?",
            "Do orders {a} £50 get free delivery?",
            "Is there free delivery on orders {a} £50?",
        ],
        [("under", "over"), ("below", "above")],
    ),
    F(
        "comparative",
        "banking",
        [
            "Are there fees for transfers {a} £1,000?",
            "Do transfers {a} £1,000 have a fee?",
        ],
        [("above", "below")],
    ),
    F(
        "comparative",
        "airline",
        [
            "Is there a charge for bags {a} 23kg?",
            "Do I pay extra for bags {a} 23kg?",
        ],
        [("over", "under")],
    ),
    F(
        "comparative",
        "health",
        [
            "Is a blood pressure {a} 140 dangerous?",
            "Is blood pressure {a} 140 a danger?",
        ],
        [("above", "below"), ("higher than", "lower than")],
    ),
    F(
        "comparative",
        "travel",
        [
            "Do children {a} 12 pay full price for the tour?",
            "For the tour, do kids {a} 12 pay the full price?",
        ],
        [("under", "over")],
    ),
    F(
        "comparative",
        "banking",
        [
            "Do I get {a} interest with a fixed-term account?",
            "With a fixed-term account, do I earn {a} interest?",
        ],
        [("more", "less"), ("higher", "lower")],
    ),
    F(
        "comparative",
        "software",
        [
            "What is the {a} number of connections the server allows?",
            "How many connections does the server allow at {a}?",
        ],
        [("maximum", "minimum")],
    ),
    F(
        "comparative",
        "travel",
        [
            "Does my passport need at {a} six months of validity?",
            "Must my passport have at {a} six months left on it?",
        ],
        [("least", "most")],
    ),
    F(
        "comparative",
        "software",
        [
            "Does the team plan include {a} than 10 users?",
            "Can the team plan have {a} than 10 users?",
        ],
        [("more", "fewer")],
    ),
    F(
        "comparative",
        "travel",
        [
            "Can I check in {a} than 3pm?",
            "Is it possible to check in {a} than 3pm?",
        ],
        [("earlier", "later")],
    ),
    F(
        "comparative",
        "airline",
        [
            "Is it {a} to book flights on a Tuesday?",
            "Are flights {a} if I book on a Tuesday?",
        ],
        [("cheaper", "more expensive")],
    ),
    F(
        "comparative",
        "retail",
        [
            "Which is the {a} laptop in the sale?",
            "In the sale, which laptop is the {a}?",
        ],
        [("cheapest", "most expensive"), ("lightest", "heaviest")],
    ),
    F(
        "comparative",
        "health",
        [
            "Is it okay to sleep {a} than seven hours?",
            "Is sleeping {a} than seven hours okay?",
        ],
        [("more", "less")],
    ),
    F(
        "comparative",
        "insurance",
        [
            "Does the premium go up for drivers {a} 25?",
            "For drivers {a} 25, does the premium go up?",
        ],
        [("under", "over")],
    ),
    # ------------------------------------------------------------------ times and dates
    F(
        "time",
        "health",
        [
            "Is the pharmacy open at 7{a}?",
            "Will the pharmacy be open at 7{a}?",
            "At 7{a}, is the pharmacy open?",
        ],
        [("am", "pm")],
    ),
    F(
        "time",
        "airline",
        [
            "My flight leaves at 2{a}, when should I get to the airport?",
            "When should I arrive at the airport for a 2{a} flight?",
        ],
        [("pm", "am")],
    ),
    F(
        "time",
        "retail",
        [
            "Can I collect my order at 8 {a}?",
            "Is it possible to pick up my order at 8 {a}?",
        ],
        [("am", "pm")],
    ),
    F(
        "time",
        "travel",
        [
            "Are trains less frequent on {a}?",
            "On {a}, do trains run less often?",
        ],
        [("weekdays", "weekends")],
    ),
    F(
        "time",
        "banking",
        [
            "Does the bank process payments at {a}?",
            "Are payments processed by the bank at {a}?",
        ],
        [("weekends", "weekdays")],
    ),
    F(
        "time",
        "travel",
        [
            "Is the museum open on {a}?",
            "On {a}, is the museum open?",
        ],
        [("Monday", "Tuesday"), ("saturdays", "sundays")],
    ),
    F(
        "time",
        "travel",
        [
            "Is {a} a good time to visit Iceland?",
            "Should I visit Iceland in {a}?",
        ],
        [("July", "January"), ("march", "october")],
    ),
    F(
        "time",
        "health",
        [
            "Should I take this tablet in the {a}?",
            "Is it best to take this tablet in the {a}?",
        ],
        [("morning", "evening")],
    ),
    F(
        "time",
        "hr",
        [
            "Is the {a} shift paid more?",
            "Do people on the {a} shift earn more?",
        ],
        [("day", "night")],
    ),
    F(
        "time",
        "retail",
        [
            "Can I get my parcel delivered {a}?",
            "Is delivery possible {a}?",
        ],
        [("today", "tomorrow")],
    ),
    F(
        "time",
        "travel",
        [
            "Does the ferry to the island run in {a}?",
            "In {a}, is the ferry to the island running?",
        ],
        [("summer", "winter")],
    ),
    F(
        "time",
        "banking",
        [
            "Is my card spending limit {a}?",
            "Does my card have a {a} spending limit?",
        ],
        [("daily", "monthly")],
    ),
    F(
        "time",
        "software",
        [
            "Why does the backup job fail every {a}?",
            "How come the backup job fails each {a}?",
        ],
        [("Friday", "Sunday")],
    ),
    # ------------------------------------------------------------------ units
    F(
        "units",
        "health",
        [
            "Is a temperature of 38 degrees {a} a fever?",
            "Is 38 degrees {a} considered a fever?",
        ],
        [("Celsius", "Fahrenheit")],
    ),
    F(
        "units",
        "health",
        [
            "Is it safe to run 10 {a} a day?",
            "Can I safely run 10 {a} every day?",
        ],
        [("km", "miles")],
    ),
    F(
        "units",
        "airline",
        [
            "Is the checked luggage limit 20 {a}?",
            "Is the limit for checked luggage 20 {a}?",
        ],
        [("kg", "lbs")],
    ),
    F(
        "units",
        "retail",
        [
            "Can I cancel within 24 {a} for a full refund?",
            "Is there a full refund if I cancel within 24 {a}?",
        ],
        [("hours", "days")],
    ),
    F(
        "units",
        "telecom",
        [
            "Is a 10 {a} data plan enough for a month?",
            "For a month, is a data plan of 10 {a} enough?",
        ],
        [("GB", "MB")],
    ),
    F(
        "units",
        "retail",
        [
            "Does the warranty last 2 {a}?",
            "Is the warranty valid for 2 {a}?",
        ],
        [("years", "months")],
    ),
    F(
        "units",
        "health",
        [
            "Is 500 {a} of paracetamol a safe dose?",
            "Is a dose of 500 {a} of paracetamol safe?",
        ],
        [("mg", "g")],
    ),
    F(
        "units",
        "banking",
        [
            "Is the transfer fee 3 {a}?",
            "Does a transfer cost 3 {a}?",
        ],
        [("dollars", "euros"), ("percent", "pounds")],
    ),
    F(
        "units",
        "software",
        [
            "Why does the request time out after 30 {a}?",
            "How come the request times out after 30 {a}?",
        ],
        [("seconds", "minutes")],
    ),
    F(
        "units",
        "health",
        [
            "How many calories are in 100 {a} of rice?",
            "In 100 {a} of rice, how many calories are there?",
        ],
        [("grams", "ounces")],
    ),
    # ------------------------------------------------------------------ scope
    F(
        "scope",
        "banking",
        [
            "Can I get a refund {a} the cooling-off period?",
            "Is a refund possible {a} the cooling-off period?",
            "{a} the cooling-off period, can I get my money back?",
        ],
        [("within", "after"), ("during", "after")],
    ),
    F(
        "scope",
        "retail",
        [
            "What happens if I cancel {a} the 14-day window?",
            "If I cancel {a} the 14-day window, what happens?",
        ],
        [("within", "after"), ("before", "after")],
    ),
    F(
        "scope",
        "banking",
        [
            "Can a {a}-time student get a loan?",
            "Is a loan available to {a}-time students?",
        ],
        [("full", "part")],
    ),
    F(
        "scope",
        "hr",
        [
            "Do {a}-time employees get holiday pay?",
            "Is holiday pay given to {a}-time staff?",
        ],
        [("full", "part")],
    ),
    F(
        "scope",
        "health",
        [
            "Is it safe to exercise {a} pregnancy?",
            "{a} pregnancy, is exercise safe?",
        ],
        [("during", "after")],
    ),
    F(
        "scope",
        "health",
        [
            "Should I eat {a} a workout?",
            "Is it good to eat {a} working out?",
        ],
        [("before", "after")],
    ),
    F(
        "scope",
        "telecom",
        [
            "Are roaming charges applied {a} the EU?",
            "Do I pay roaming charges {a} the EU?",
        ],
        [("inside", "outside")],
    ),
    F(
        "scope",
        "insurance",
        [
            "Are {a} doctors covered by my plan?",
            "Does my plan cover {a} doctors?",
        ],
        [("in-network", "out-of-network")],
    ),
    F(
        "scope",
        "insurance",
        [
            "How much does the {a} health plan cost?",
            "What is the price of the {a} health plan?",
        ],
        [("individual", "family")],
    ),
    F(
        "scope",
        "travel",
        [
            "How much is an {a} ticket for the zoo?",
            "What does an {a} ticket to the zoo cost?",
        ],
        [("adult", "child")],
    ),
    F(
        "scope",
        "travel",
        [
            "How much is a {a} ticket to Leeds?",
            "What does a {a} ticket to Leeds cost?",
        ],
        [("single", "return"), ("one-way", "round-trip")],
    ),
    F(
        "scope",
        "airline",
        [
            "How early should I arrive for a {a} flight?",
            "For a {a} flight, how early should I get to the airport?",
        ],
        [("domestic", "international")],
    ),
    F(
        "scope",
        "banking",
        [
            "Is my salary paid {a} tax?",
            "Is the salary I receive {a} tax?",
        ],
        [("before", "after")],
    ),
    F(
        "scope",
        "software",
        [
            "Does the licence cover {a} use?",
            "Is {a} use covered by the licence?",
        ],
        [("personal", "commercial")],
    ),
    F(
        "scope",
        "retail",
        [
            "Is the discount valid {a}?",
            "Can I use the discount {a}?",
        ],
        [("online", "in store")],
    ),
    # ------------------------------------------------------------------ paraphrases only
    F(
        "paraphrase",
        "software",
        [
            "How do I reset my password?",
            "How can I reset my password?",
            "What is the way to reset my password?",
        ],
        [("", "")],
    ),
    F(
        "paraphrase",
        "airline",
        [
            "How many bags can I check on an international flight?",
            "How many checked bags am I allowed on an international flight?",
            "On an international flight, how many bags can I check?",
        ],
        [("", "")],
    ),
    F(
        "paraphrase",
        "banking",
        [
            "How do I order a new debit card?",
            "How can I order a replacement debit card?",
            "What do I do to order a new debit card?",
        ],
        [("", "")],
    ),
    F(
        "paraphrase",
        "retail",
        [
            "Where is my order?",
            "Where's my order?",
            "Can you tell me where my order is?",
        ],
        [("", "")],
    ),
    F(
        "paraphrase",
        "health",
        [
            "What are the symptoms of dehydration?",
            "What are the signs of dehydration?",
            "Which symptoms show dehydration?",
        ],
        [("", "")],
    ),
    F(
        "paraphrase",
        "travel",
        [
            "Do I need a visa to visit Japan?",
            "Is a visa required to visit Japan?",
            "Do I need a visa for a trip to Japan?",
        ],
        [("", "")],
    ),
]


def _fill(variant: str, value: str, second: str | None = None) -> str:
    text = variant.format(a=value) if second is None else variant.format(x=value, y=second)
    text = re.sub(r"\s+", " ", text).strip()
    text = re.sub(r"\s+([?,.:])", r"\1", text)
    return text[0].upper() + text[1:]


def _texts(frame: Frame, variant: str, fill: str, other: str) -> str:
    if frame.category == "direction":
        return _fill(variant, fill, other)
    return _fill(variant, fill)


def pairs_of(frame: Frame) -> list[tuple[str, str, str, str]]:
    """``(a, b, label, style)`` for one frame."""
    out: list[tuple[str, str, str, str]] = []
    variants = frame.variants
    for one, two in frame.fills:
        if frame.category == "paraphrase":
            for i in range(len(variants)):
                for j in range(i + 1, len(variants)):
                    out.append((_fill(variants[i], ""), _fill(variants[j], ""), "same", "para"))
            continue
        for i, variant in enumerate(variants[:2]):
            out.append(
                (
                    _texts(frame, variant, one, two),
                    _texts(frame, variant, two, one),
                    "different",
                    "minimal",
                )
            )
            if i == 0 and len(variants) > 1:
                out.append(
                    (
                        _texts(frame, variants[0], one, two),
                        _texts(frame, variants[1], two, one),
                        "different",
                        "reworded",
                    )
                )
        last = len(variants) - 1
        out.append(
            (
                _texts(frame, variants[last], two, one),
                _texts(frame, variants[0], one, two),
                "different",
                "reworded",
            )
        )
        for fill, other in ((one, two), (two, one)):
            out.append(
                (
                    _texts(frame, variants[0], fill, other),
                    _texts(frame, variants[1], fill, other),
                    "same",
                    "para",
                )
            )
            if len(variants) > 2:
                out.append(
                    (
                        _texts(frame, variants[1], fill, other),
                        _texts(frame, variants[2], fill, other),
                        "same",
                        "para",
                    )
                )
    # The same pair can arise twice (e.g. two variants that fill alike): keep one.
    seen: set[tuple[str, str]] = set()
    unique = []
    for a, b, label, style in out:
        if a != b and (a, b) not in seen:
            seen.add((a, b))
            unique.append((a, b, label, style))
    return unique


def build() -> list[dict[str, str]]:
    rng = random.Random(SEED)
    by_category: dict[str, list[int]] = {}
    for n, frame in enumerate(FRAMES):
        by_category.setdefault(frame.category, []).append(n)
    heldout: set[int] = set()
    for numbers in by_category.values():
        chosen = list(numbers)
        rng.shuffle(chosen)
        heldout.update(chosen[: max(1, round(len(chosen) * HELDOUT_SHARE))])
    records = []
    for n, frame in enumerate(FRAMES):
        for a, b, label, style in pairs_of(frame):
            # Half the pairs the other way round: the checks must be symmetric.
            if rng.random() < 0.5:
                a, b = b, a
            records.append(
                {
                    "id": f"t{len(records):04d}",
                    "a": a,
                    "b": b,
                    "label": label,
                    "category": frame.category if label == "different" else "paraphrase",
                    "style": style,
                    "domain": frame.domain,
                    "frame": f"f{n:03d}-{frame.category}",
                    "split": "heldout" if n in heldout else "dev",
                }
            )
    return records


def main() -> None:
    records = build()
    with OUT.open("w", encoding="utf-8") as fh:
        for record in records:
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
    different = sum(r["label"] == "different" for r in records)
    held = sum(r["split"] == "heldout" for r in records)
    print(
        f"{len(records)} pairs ({different} traps, {len(records) - different} paraphrases), "
        f"{held} held out -> {OUT}"
    )


if __name__ == "__main__":
    main()
