"""The city map's data as JSON (``exchange.overview.city``)."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from exchange.overview.city import city_map


class CityMapOutput(serializers.Serializer):
    class Department(serializers.Serializer):
        id = serializers.IntegerField()
        code = serializers.CharField()
        name = serializers.CharField()
        slug = serializers.CharField()
        gives = serializers.BooleanField(help_text="Gives fields of at least one dataset to another department.")
        receives = serializers.BooleanField()
        island = serializers.BooleanField(help_text="Neither gives nor receives (as far as the caller sees).")

    class Flow(serializers.Serializer):
        class FieldForm(serializers.Serializer):
            name = serializers.CharField()
            form = serializers.CharField(help_text="clear, pseudonymised or masked: the most revealing granted.")

        class Delivery(serializers.Serializer):
            id = serializers.IntegerField()
            status = serializers.CharField()
            target_table = serializers.CharField()
            deliver_on_change = serializers.BooleanField()
            rows_per_day = serializers.FloatField(help_text="Rows delivered per day over the last 7 days.")
            last_delivered_at = serializers.DateTimeField(allow_null=True)
            last_latency_seconds = serializers.FloatField(
                allow_null=True, help_text="The last delivery: from its oldest change at the source to the target.")
            up_to_date = serializers.BooleanField(help_text="Holds every change the store has.")
            failing = serializers.BooleanField(help_text="Its last delivery failed.")
            late = serializers.BooleanField(help_text="Misses the dataset's freshness target.")
            last_error = serializers.CharField()

        giver = serializers.CharField(help_text="Code of the owning department.")
        receiver = serializers.CharField(help_text="Code of the department granted the fields.")
        dataset_id = serializers.IntegerField()
        dataset = serializers.CharField()
        granted_fields = FieldForm(many=True)
        state = serializers.ChoiceField(choices=["granted", "fresh", "behind", "late", "failing"])
        subscriptions = Delivery(many=True)

    class WaitingRequest(serializers.Serializer):
        id = serializers.IntegerField()
        dataset = serializers.CharField()
        dataset_id = serializers.IntegerField()
        owner = serializers.CharField()
        requester = serializers.CharField(help_text="The department, or the person, the access is for.")
        status = serializers.CharField()
        submitted_at = serializers.DateTimeField()
        waiting_days = serializers.FloatField()

    whole_city = serializers.BooleanField(help_text="False: only the flows of the caller's own departments.")
    departments = Department(many=True)
    flows = Flow(many=True)
    islands = serializers.ListField(child=serializers.CharField())
    waiting_requests = WaitingRequest(many=True)
    failing = Flow(many=True)
    generated_at = serializers.DateTimeField()


class CityMapApi(APIView):
    @extend_schema(responses=CityMapOutput)
    def get(self, request: Request) -> Response:
        """Who shares what with whom: departments, flows with their fields, forms, rows per day
        and freshness, islands, the requests waiting longest. The whole city for operators
        and city auditors; the flows of their own departments for everyone else."""
        return Response(CityMapOutput(city_map(user=request.user)).data)
