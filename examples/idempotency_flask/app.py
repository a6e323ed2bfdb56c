import time

from flask import Flask, jsonify, request

import baldur
from baldur.adapters.flask import init_flask

app = Flask(__name__)
init_flask(app)  # honours Idempotency-Key on POST and PATCH (BALDUR_IDEMPOTENCY=optional)

charges = []


@app.post("/charges")
@baldur.protected("charges")
def create_charge():
    order = request.get_json()
    time.sleep(2)  # the payment provider takes its time
    charges.append(order)
    return jsonify({"id": f"ch_{len(charges)}", "amount": order["amount"]}), 201
