"""The customer-support tables: 16 intents (phrasings with slots, the agent's answer, a 2-turn variant)
and the values slots are filled from. Data only; written for this project, no copied text.

Leaves out: drawing records, splits and conversations from these tables (support.py).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Intent:
    """One customer intent: its phrasings (with `{slot}`s), the agent's answer, and a 2-turn variant.

    Every slot in `response` appears in every phrasing, so the answer never mentions a detail the
    customer did not give. `opener` messages carry no slot; the agent then asks (`ask`) and the
    customer supplies the slots (`follow_up`).
    """

    name: str
    category: str
    phrasings: tuple[str, ...]
    response: str
    openers: tuple[str, ...]
    ask: str
    follow_up: str


INTENTS: tuple[Intent, ...] = (
    Intent(
        "track_order", "ORDER",
        (
            "Where is my order {order}?",
            "Can you tell me where order {order} is right now?",
            "I placed order {order} on {date} and it still hasn't arrived.",
            "I'd like to track my package, the order number is {order}.",
            "What's the status of order {order}? I ordered the {product}.",
            "has order {order} shipped yet",
            "Any update on when order {order} will get here?",
            "My {product} (order {order}) is late, where is it?",
        ),
        "Your order {order} is on its way and should arrive within 3-5 business days. "
        "You can follow it any time under Orders > Track in your account.",
        ("Where is my order?", "Can you help me track a package?", "My order hasn't arrived yet."),
        "Sure, I can check that. What is your order number?",
        "It's {order}.",
    ),
    Intent(
        "cancel_order", "ORDER",
        (
            "Please cancel order {order}.",
            "I want to cancel my order {order}, I don't need it anymore.",
            "Can I still cancel order {order}? I bought the {product} by mistake.",
            "cancel order {order} please",
            "I changed my mind about the {product}, please cancel order {order}.",
            "How do I cancel order {order} that I placed on {date}?",
            "I need order {order} cancelled before it ships.",
            "Is it too late to cancel order {order}?",
        ),
        "I've cancelled order {order}. The full amount goes back to your original payment method "
        "within 5 business days.",
        ("I want to cancel an order.", "Can I cancel my purchase?", "How do I cancel an order?"),
        "I can do that for you. Which order would you like to cancel?",
        "Order {order}, please.",
    ),
    Intent(
        "change_order", "ORDER",
        (
            "Can I change order {order} to the {product} instead?",
            "I'd like to swap the item in order {order} for the {product}.",
            "Please update order {order}: I want the {product}.",
            "I ordered the wrong thing in order {order}, can you switch it to the {product}?",
            "change order {order} to {product}",
            "Is it possible to replace what I bought in order {order} with the {product}?",
            "Could you modify order {order} so it contains the {product}?",
            "Before order {order} ships, please change it to the {product}.",
        ),
        "I've updated order {order} to the {product}. You'll get a confirmation email shortly, "
        "and any price difference is settled automatically.",
        ("I need to change my order.", "Can I modify an order I placed?", "I ordered the wrong item."),
        "No problem. What is the order number, and which product would you like instead?",
        "Order {order}, and I'd like the {product} instead.",
    ),
    Intent(
        "get_refund", "REFUND",
        (
            "I want a refund for the {product} from order {order}.",
            "The {product} doesn't work, can I get my money back? Order {order}.",
            "How do I get a refund for order {order}?",
            "Please refund order {order}, the {product} isn't what I expected.",
            "refund for order {order} please",
            "I returned the {product} from order {order}, when do I get a refund?",
            "Can you give me a refund on order {order}?",
            "I'd like my money back for order {order}.",
        ),
        "I've opened a refund for order {order}. The money will be back on your original payment "
        "method within 5-7 business days.",
        ("I want a refund.", "Can I get my money back?", "How do refunds work?"),
        "I'm sorry it didn't work out. What is the order number?",
        "The order number is {order}.",
    ),
    Intent(
        "track_refund", "REFUND",
        (
            "Where is my refund for order {order}?",
            "I still haven't received the refund for order {order}.",
            "What's the status of my refund for order {order}? I returned it on {date}.",
            "When will I see the money for order {order} back on my account?",
            "refund status order {order}",
            "You promised a refund for order {order} but nothing has arrived.",
            "Has the refund for order {order} been processed yet?",
            "Can you check on the refund for my {product}, order {order}?",
        ),
        "The refund for order {order} has been issued and usually reaches your account within "
        "5-7 business days. If it hasn't arrived by then, reply here and we'll contact your bank.",
        ("Where is my refund?", "I'm still waiting for a refund.", "Can you check my refund status?"),
        "Let me look that up. What is the order number of the refund?",
        "It was order {order}.",
    ),
    Intent(
        "recover_password", "ACCOUNT",
        (
            "I forgot my password, my email is {email}.",
            "I can't log in to my account {email}.",
            "Please reset the password for {email}.",
            "How do I recover my password? The account is {email}.",
            "locked out of my account, email {email}",
            "My password doesn't work anymore, account {email}.",
            "Can you send a password reset link to {email}?",
            "I need to get back into my account, it's registered to {email}.",
        ),
        "I've sent a password reset link to {email}. It's valid for 24 hours, so check your spam "
        "folder if you don't see it.",
        ("I forgot my password.", "I can't log in to my account.", "How do I reset my password?"),
        "I can help with that. Which email address is your account registered to?",
        "It's {email}.",
    ),
    Intent(
        "change_email", "ACCOUNT",
        (
            "I want to change the email on my account to {email}.",
            "Please update my email address to {email}.",
            "Can you switch my account email to {email}?",
            "How do I change my login email? The new one is {email}.",
            "new email for my account: {email}",
            "I have a new email address, {email}, please use it for my account.",
            "Could you replace my account's email with {email}?",
            "Update my contact email to {email}, please.",
        ),
        "I've started changing your account email to {email}. Please click the confirmation link "
        "we just sent there to finish.",
        ("I want to change my email address.", "How do I update my account email?",
         "Can I change the email on my account?"),
        "Of course. What is the new email address?",
        "The new one is {email}.",
    ),
    Intent(
        "delete_account", "ACCOUNT",
        (
            "Please delete my account, {email}.",
            "I want to close my account registered to {email}.",
            "How do I delete the account {email}?",
            "Remove my account and my data, the email is {email}.",
            "delete account {email}",
            "I no longer want an account with you, please delete {email}.",
            "Can you close the account that uses {email}?",
            "I'd like my account {email} deleted permanently.",
        ),
        "I'm sorry to see you go. To delete the account {email}, click the confirmation link we "
        "just sent to that address; the deletion is final after 14 days.",
        ("I want to delete my account.", "How do I close my account?", "Please remove my account."),
        "I can help with that. Which email address is the account registered to?",
        "It's {email}.",
    ),
    Intent(
        "delivery_period", "DELIVERY",
        (
            "How long does delivery to {city} take?",
            "If I order today, when will it arrive in {city}?",
            "What's the shipping time to {city}?",
            "How many days does it take to ship the {product} to {city}?",
            "delivery time {city}",
            "I live in {city}, how fast can you deliver?",
            "Can I get the {product} in {city} by {date}?",
            "How soon do orders reach {city}?",
        ),
        "Standard delivery to {city} takes 3-5 business days and express takes 1-2. "
        "Orders placed before 2 pm ship the same day.",
        ("How long does delivery take?", "When will my order arrive if I order today?",
         "What are your shipping times?"),
        "That depends on where it's going. Which city should we deliver to?",
        "To {city}.",
    ),
    Intent(
        "shipping_cost", "DELIVERY",
        (
            "How much is shipping to {city}?",
            "What does it cost to send the {product} to {city}?",
            "Do you charge for delivery to {city}?",
            "What are the shipping fees for {city}?",
            "shipping cost to {city}",
            "Is shipping free to {city}?",
            "How much extra is express delivery to {city}?",
            "I'm in {city}, what will delivery cost me?",
        ),
        "Shipping to {city} costs $4.99 for standard and $12.99 for express delivery. "
        "Orders over $50 ship for free.",
        ("How much does shipping cost?", "Do you charge for delivery?", "What are your shipping fees?"),
        "Happy to check. Which city are you shipping to?",
        "I'm in {city}.",
    ),
    Intent(
        "change_shipping_address", "SHIPPING_ADDRESS",
        (
            "I moved to {city}, can you change the address for order {order}?",
            "Please ship order {order} to my new address in {city}.",
            "Can I change the delivery address of order {order}? It should go to {city}.",
            "Wrong address on order {order}, it needs to go to {city}.",
            "change address order {order} to {city}",
            "Could order {order} be delivered to {city} instead?",
            "I need order {order} redirected to {city}.",
            "Update the shipping address for order {order}, I'm now in {city}.",
        ),
        "I've updated the shipping address of order {order} to your new address in {city}. "
        "If it has already shipped, we'll redirect it with the carrier.",
        ("I need to change my shipping address.", "Can I change where my order is delivered?",
         "My order has the wrong address."),
        "Sure. What is the order number, and which city should it go to?",
        "Order {order}, and it should go to {city}.",
    ),
    Intent(
        "payment_issue", "PAYMENT",
        (
            "My {payment} payment keeps getting declined.",
            "I can't pay with {payment}, it gives me an error.",
            "Why was my {payment} payment rejected?",
            "The checkout fails every time I choose {payment}.",
            "payment failed with {payment}",
            "I tried to buy the {product} with {payment} but the payment didn't go through.",
            "Something is wrong with paying by {payment} on your site.",
            "My order won't complete, {payment} says the payment failed.",
        ),
        "Sorry about the trouble with {payment}. No money is taken for a failed payment; please "
        "check your details or try another method, and your cart stays saved.",
        ("My payment didn't go through.", "I can't complete my payment.", "The checkout keeps failing."),
        "I'm sorry about that. Which payment method were you using?",
        "I was paying with {payment}.",
    ),
    Intent(
        "check_payment_methods", "PAYMENT",
        (
            "Can I pay with {payment}?",
            "Do you accept {payment}?",
            "Is {payment} an option at checkout?",
            "I'd like to buy the {product} using {payment}, is that possible?",
            "pay by {payment}?",
            "Does your shop take {payment}?",
            "Can I use {payment} for my order?",
            "Is paying with {payment} supported?",
        ),
        "Yes, you can pay with {payment}. We accept credit and debit cards, PayPal, Apple Pay, "
        "Google Pay and bank transfer at checkout.",
        ("Which payment methods do you accept?", "How can I pay for my order?",
         "What are my payment options?"),
        "We accept several. Which payment method would you like to use?",
        "I'd like to use {payment}.",
    ),
    Intent(
        "get_invoice", "INVOICE",
        (
            "Please send the invoice for order {order} to {email}.",
            "I need an invoice for order {order}, my email is {email}.",
            "Can I get a receipt for order {order}? Send it to {email}.",
            "Where can I find the invoice for order {order}? Email: {email}",
            "invoice order {order} to {email}",
            "My company needs the invoice for order {order}, please email {email}.",
            "Could you email me the invoice of order {order} at {email}?",
            "I lost the invoice for order {order}, can you resend it to {email}?",
        ),
        "I've emailed the invoice for order {order} to {email}. You can also download it any "
        "time under Orders in your account.",
        ("I need an invoice.", "Can you send me a receipt?", "Where can I find my invoice?"),
        "Sure. What is the order number, and which email should I send it to?",
        "Order {order}, please send it to {email}.",
    ),
    Intent(
        "contact_human_agent", "CONTACT",
        (
            "I want to talk to a real person about order {order}.",
            "Can I speak to a human agent? It's about order {order}.",
            "Please connect me with someone from your team regarding order {order}.",
            "I need a human, not a bot, for order {order}.",
            "human agent please, order {order}",
            "Is there a person I can talk to about my order {order}?",
            "Transfer me to customer service, order {order}.",
            "I'd rather discuss order {order} with a human.",
        ),
        "Of course. I'm transferring you to a human agent now and sharing the details of order "
        "{order}, so you won't have to repeat yourself.",
        ("I want to talk to a human.", "Can I speak to a real person?", "Connect me with an agent."),
        "Of course. Which order is this about, so the agent has the details?",
        "It's about order {order}.",
    ),
    Intent(
        "damaged_item", "FEEDBACK",
        (
            "The {product} I received in order {order} is broken.",
            "My {product} arrived damaged, order {order}.",
            "Order {order} came with a cracked {product}.",
            "The {product} from order {order} stopped working after one day.",
            "damaged {product} order {order}",
            "I'm really unhappy, the {product} in order {order} is defective.",
            "The box for order {order} was crushed and the {product} is ruined.",
            "Order {order}: the {product} doesn't turn on.",
        ),
        "I'm sorry the {product} arrived damaged. I've arranged a free replacement for order "
        "{order}, and a prepaid return label is on its way to your email.",
        ("My item arrived damaged.", "I received a broken product.", "Something in my order is defective."),
        "I'm sorry to hear that. What is the order number, and which product is damaged?",
        "Order {order}, the {product}.",
    ),
)

# Slot values, drawn anew for every message.
PRODUCTS = (
    "wireless headset", "espresso machine", "pair of running shoes", "desk lamp", "yoga mat",
    "winter jacket", "bluetooth speaker", "coffee grinder", "backpack", "smart watch",
    "electric kettle", "office chair", "water bottle", "phone case", "table fan",
    "cast iron pan", "pair of rain boots", "camping tent", "gaming mouse", "wool scarf",
)
CITIES = (
    "Lisbon", "Denver", "Osaka", "Toronto", "Leeds", "Lyon", "Austin", "Porto", "Munich",
    "Seattle", "Dublin", "Valencia", "Melbourne", "Oslo", "Krakow", "Nantes", "Boston", "Turin",
)
NAMES = (
    "anna", "ben", "carla", "david", "elena", "farid", "grace", "hugo", "ines", "jonas",
    "kemal", "lucia", "mei", "noah", "olga", "pablo", "rosa", "sam", "tariq", "yuki",
)
SURNAMES = ("smith", "lopez", "kim", "novak", "rossi", "berg", "silva", "khan", "meyer", "dubois")
DOMAINS = ("example.com", "example.org", "example.net", "mail.example.com")
PAYMENTS = ("PayPal", "Apple Pay", "Google Pay", "Visa", "Mastercard", "American Express", "bank transfer")
MONTHS = (
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
)
# Surface variation around a message, and the chat's optional closing turn.
GREETINGS = ("", "", "", "Hi! ", "Hello. ", "Hey there. ", "Good morning! ", "Hi team! ")
SIGN_OFFS = ("", "", "", " Thanks.", " Thank you!", " Please help.", " Thanks in advance.")
THANKS = ("Thanks!", "Great, thank you.", "Perfect, thanks for your help.", "Thank you so much.")
CLOSING = "You're welcome! Is there anything else I can help you with?"
