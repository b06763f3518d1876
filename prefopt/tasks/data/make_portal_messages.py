"""Write ``portal_messages.jsonl``: SYNTHETIC patient-portal messages, labelled with urgency and
the staff who should handle them. Every message is composed from the templates below; none
comes from a real patient. Run ``python make_portal_messages.py`` to regenerate (seeded).
"""
import itertools
import json
import random
from pathlib import Path

PER_GROUP = 40
OPEN = ["", "Hi, ", "Hello, ", "Good morning. ", "Hi Dr. team, ", "Sorry to bother you. ", "Hello there, "]
CLOSE = ["", " Thanks.", " Thank you!", " Please advise.", " What should I do?", " Thanks for your help."]
MEDS = ["metformin", "lisinopril", "atorvastatin", "levothyroxine", "amlodipine", "sertraline", "omeprazole"]
CRITICAL = ["insulin", "warfarin", "levetiracetam", "apixaban", "prednisone", "my seizure medicine"]
WHO = ["I", "My husband", "My wife", "My mother", "My father", "My son", "My daughter"]
WHEN = ["since this morning", "for the last hour", "since about 20 minutes ago", "since last night"]
DAYS = ["2 days", "3 days", "4 days", "about a week", "since Monday"]

GROUPS = {
    ("emergency", "physician"): [
        "{who} has crushing chest pain spreading to the left arm and is sweating, {when}.",
        "{who} suddenly can't lift the right arm and speech is slurred, {when}.",
        "{who} took a new antibiotic and now has throat swelling and trouble breathing, {when}.",
        "I have been thinking about ending my life and I have a plan. I don't feel safe tonight.",
        "{who} has the worst headache of their life that came on suddenly, {when}, and is vomiting.",
        "{who} is very short of breath even at rest and lips look bluish, {when}.",
        "{who} passed black tarry stools twice today and nearly fainted when standing up.",
        "{who} has a fever of 40 C with a stiff neck and a purple rash, {when}.",
    ],
    ("emergency", "nurse"): [
        "{who} had surgery {days} ago and the incision is now bleeding heavily through the dressing, {when}.",
        "{who} fainted at home and hit their head, now confused and drowsy, {when}.",
        "Blood sugar reading is 35 and {who_l} is shaky and not making sense, {when}.",
        "{who} has a nosebleed that won't stop after 45 minutes of pressure and is on blood thinners.",
        "After the infusion yesterday {who_l} has hives everywhere and the face is swelling, {when}.",
    ],
    ("urgent", "physician"): [
        "I have burning when I pee, back pain and a fever of 38.6 for {days}.",
        "{who} has had a cough with green sputum and fever for {days} and it is getting worse.",
        "The portal shows my potassium is flagged high at 6.1. Should I be worried?",
        "{who} started {med} and now has a spreading red rash on the chest, {days} so far.",
        "My ankle is swollen and painful after a fall {days} ago and I can't put weight on it.",
        "{who} has new calf swelling and pain in one leg {days} after a long flight.",
        "My blood pressure readings are 185/110 this morning with a mild headache.",
    ],
    ("urgent", "nurse"): [
        "The wound from my procedure is red, warm and draining yellow fluid, {days} now.",
        "{who} has had vomiting and diarrhea for {days} and can't keep fluids down.",
        "My child has a fever of 39.2 C and is fussy but drinking a little. Should we come in today?",
        "My sugars have been in the 300s for {days} even with my usual doses.",
        "{who} has a urinary catheter and no urine has drained {when}.",
        "The swelling in my legs is worse and I gained 2 kg in {days}.",
    ],
    ("urgent", "pharmacist"): [
        "I ran out of {crit} today and the pharmacy says the refill needs approval.",
        "I accidentally took a double dose of {crit} this morning. What should I do?",
        "The pharmacy flagged an interaction between {crit} and the new antibiotic I was given today.",
        "I vomited right after taking {crit} this morning. Should I take another dose?",
        "My pharmacy is out of stock of {crit} and I only have one dose left.",
    ],
    ("routine", "physician"): [
        "I saw my cholesterol results in the portal. Can we talk about whether I still need {med}?",
        "I'd like a referral to a dermatologist for a mole I want checked. No changes lately.",
        "My knee has ached on and off for months. Could we discuss options at my next visit?",
        "Can you explain what the thyroid results mean? The portal says they are within range.",
        "I'm interested in stopping {med} since I have lost weight. Is that something we can discuss?",
        "I have had mild heartburn after big meals for {days}, nothing severe. Any suggestions?",
    ],
    ("routine", "nurse"): [
        "When is {who_l} due for the next tetanus or flu shot?",
        "Could someone show me again how to use my new glucose meter? The numbers seem fine.",
        "What foods should I avoid now that I have been told I have high blood pressure?",
        "How often should I change the dressing on my healing scrape? It looks fine.",
        "Is it okay to exercise the week after my colonoscopy? I feel well.",
        "Can I get the instructions for the 24-hour urine collection again?",
    ],
    ("routine", "pharmacist"): [
        "Please refill my {med}. I still have about {days} of tablets left.",
        "Is there a generic version of {med} that would be cheaper?",
        "Should I take {med} with food or on an empty stomach?",
        "{med} gives me a mild upset stomach. Is there a better time of day to take it?",
        "Can I take ibuprofen for a headache while I'm on {med}?",
        "I'm travelling abroad next month. Can I get an extra month of {med}?",
    ],
    ("routine", "front desk"): [
        "I need to reschedule my appointment next {day} to later in the month.",
        "I got a bill for my last visit that I think should have gone to insurance. Who can help?",
        "Can you fill out my work note for the days I was off {days} ago?",
        "Please send my records to my new doctor's office. What form do I need?",
        "I can't log in to the portal app on my phone. Can you reset my access?",
        "Is there parking at the new clinic building, and what are your hours on {day}s?",
        "I need a copy of my vaccination record for school forms.",
    ],
}
DAY = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday"]


def fills(template, rng):
    who = rng.choice(WHO)
    return template.format(who=who, who_l="me" if who == "I" else who[0].lower() + who[1:], when=rng.choice(WHEN),
                           days=rng.choice(DAYS), med=rng.choice(MEDS), crit=rng.choice(CRITICAL), day=rng.choice(DAY))


def main():
    rng = random.Random(2025)
    rows = []
    for (urgency, staff), templates in GROUPS.items():
        seen = set()
        for attempt in itertools.count():
            if len(seen) >= PER_GROUP or attempt > 5000:
                break
            body = fills(rng.choice(templates), rng)
            body = body[0].upper() + body[1:]
            msg = f"{rng.choice(OPEN)}{body}{rng.choice(CLOSE)}".strip()
            if msg not in seen:
                seen.add(msg)
                rows.append({"message": msg, "urgency": urgency, "staff": staff})
    rng.shuffle(rows)
    out = Path(__file__).with_name("portal_messages.jsonl")
    with open(out, "w", encoding="utf-8") as f:
        for i, r in enumerate(rows):
            f.write(json.dumps({"id": f"portal-{i:04d}", **r, "synthetic": True}) + "\n")
    print(f"wrote {len(rows)} synthetic messages to {out}")


if __name__ == "__main__":
    main()
