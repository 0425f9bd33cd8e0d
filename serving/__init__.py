"""The course's model server, a product beside the course: the Flask API behind Waitress
(:mod:`serving.serve`), what it does with an upload (:mod:`serving.upload`), the form's limits
(:mod:`serving.form_limits`), loading a model file and answering (:mod:`serving.inference`), and
its load test (:mod:`serving.loadtest`). Chapter 9 writes the app on the page, then imports this
hardened version; ``python -m serving.serve serve --model FILE`` runs it."""
