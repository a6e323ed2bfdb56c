from flask import Flask, jsonify
import baldur
from baldur.adapters.flask import init_flask

app = Flask(__name__)
init_flask(app)            # calls baldur.init() once, installs the request hooks

@app.get("/demo")
@baldur.protected("demo")  # the response travels through a circuit breaker
def demo():
    return jsonify({"status": "ok", "service": "demo"})
