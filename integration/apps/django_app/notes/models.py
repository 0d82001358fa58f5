from django.conf import settings
from django.db import models


class Note(models.Model):
    text = models.CharField(max_length=200)
    author = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL)
    # Which node's app wrote it, and the fencing token litegate stamped on the
    # request — so tests can prove where writes landed.
    served_by = models.CharField(max_length=100)
    term = models.CharField(max_length=40, blank=True)
    created = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.text
