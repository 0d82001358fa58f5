from django.contrib import admin
from django.urls import include, path

from notes import views

urlpatterns = [
    path("admin/", admin.site.urls),
    path("accounts/", include("django.contrib.auth.urls")),
    path("", views.note_list, name="note-list"),
    path("whoami/", views.whoami, name="whoami"),
]
