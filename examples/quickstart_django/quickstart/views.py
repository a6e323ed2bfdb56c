from django.http import JsonResponse

import baldur


@baldur.protected("demo")  # the response travels through a circuit breaker
def demo(request):
    return JsonResponse({"status": "ok", "service": "demo"})
