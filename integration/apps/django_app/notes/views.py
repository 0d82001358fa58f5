from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import JsonResponse
from django.shortcuts import redirect, render

from .forms import NoteForm
from .models import Note


@login_required
def note_list(request):
    if request.method == "POST":
        form = NoteForm(request.POST)
        if form.is_valid():
            note = form.save(commit=False)
            note.author = request.user
            note.served_by = settings.APP_NODE
            note.term = request.headers.get("Litegate-Term", "")
            note.save()
            return redirect("note-list")
    else:
        form = NoteForm()
    notes = Note.objects.order_by("-id")
    return render(request, "notes/list.html", {"form": form, "notes": notes, "node": settings.APP_NODE})


def whoami(request):
    return JsonResponse(
        {
            "node": settings.APP_NODE,
            "user": request.user.username if request.user.is_authenticated else None,
            "secure": request.is_secure(),
            "host": request.get_host(),
        }
    )
